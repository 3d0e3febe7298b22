"""The command lines, one module per command, over one set of argument types (``args``).

``keras-t2t-convert`` (``convert``), ``keras-t2t-evaluate`` (``evaluate``),
``keras-t2t-visualize`` (``visualize``), ``keras-t2t-weights`` (``weights``);
``keras-t2t-export`` lives with the exporter (``keras_t2t.export.cli``). Their
parsers and entry points are in ``commands``, which imports no Keras: each parses
its arguments (``--help`` answers at once), quiets TensorFlow's logs unless
``--verbose``, then imports its command's module and calls its ``run(args)``.
Each command module's ``main(argv)`` is that entry point and returns the exit status.
"""
