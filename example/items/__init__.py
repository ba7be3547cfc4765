"""The one app of the example project: a list of items, changed live in every open tab."""
