// placeholder, refreshed by make bindings
