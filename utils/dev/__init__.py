"""Developer tooling, apart from the notebooks' helpers: the synthetic demo set (`demo`) and the
headless notebook runner behind `make demo` and the smoke tests (`pipeline`)."""
