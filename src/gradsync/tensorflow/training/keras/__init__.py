"""Keras adapters: wrapped Keras 3 and tf_keras optimizers, callbacks, saving, and which
Keras a program uses. The public Keras modules are built from these."""
