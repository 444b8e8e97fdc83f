"""mmptq's command lines: ``python -m mmptq.tools.<name>`` (or the
``mmptq-<name>`` scripts, or ``tools/<name>.py`` in a checkout) for
``test``, ``quantize``, ``benchmark``, ``export``, ``analyze``, ``train``,
``convert_itpn`` and ``convert_lavt``.

Each module parses its arguments with only argparse and :mod:`.args`
loaded (``--help`` does not import torch), then imports the stack
(:func:`.args.load_stack`) and calls one ``mmptq.apis`` function. The top
layer: it may import every other part of mmptq.
"""
