"""Files shipped inside the package: the default configuration, ``rampart.yaml``,
read through :mod:`importlib.resources` so it is found from any working directory
and in an installed wheel alike."""
