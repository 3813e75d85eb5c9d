"""Human priors and the prompts made from them: the seed taxonomy, the axes, prompt templates,
seed topics from a corpus (the YAML files beside these modules are the priors themselves).
"""
