"""The example project of ``signalbus demo``: one page of items, changed live in every tab."""
