"""The one error of the export: bad input, reported before anything is written."""


class ExportError(ValueError):
    """Bad input to an export (the model, a format name, an image folder...); nothing was written."""
