"""The command lines, one module per command, over one set of argument types (``args``).

``keras-t2t-convert`` (``convert``), ``keras-t2t-evaluate`` (``evaluate``),
``keras-t2t-visualize`` (``visualize``), ``keras-t2t-weights`` (``weights``);
``keras-t2t-export`` lives with the exporter (``keras_t2t.export.cli``). Each ``main(argv)`` returns the exit status.
"""
