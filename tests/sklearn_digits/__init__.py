"""A user's own TFDS dataset, laid out as ``tfds new sklearn_digits`` lays one out (the builder in
``sklearn_digits_dataset_builder.py``). Importing the module registers ``sklearn_digits`` with TFDS."""
