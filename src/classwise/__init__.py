"""classwise: what an image classifier learned for each class (Zhao et al. 2021), and whether one class is backdoored."""


def __getattr__(name: str):
    # Lazy, so `import classwise` stays cheap for the CLIs: classwise.audit(...) imports torch on first use.
    if name in ("audit", "Audit"):
        from classwise import auditing as module

        return getattr(module, name)
    raise AttributeError(f"module 'classwise' has no attribute {name!r}")
