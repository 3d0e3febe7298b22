"""Images in, tensors out: the image vocabulary, ImageNet's class names and the built-in digits.

``images`` (normalisation, evaluation transform, folders, the image-size grammar),
``imagenet`` (the 1000 class names shipped with the package, ``decode_predictions``),
``digits`` (scikit-learn's handwritten digits, the no-download default).
The JSON file beside them is package data.
"""
