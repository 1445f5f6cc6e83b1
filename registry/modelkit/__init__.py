"""The code that touches a model file, shipped into every Bento and run by model processes.

One decision, one place: how an artifact is loaded (``loading``) and how rows become model
input and outputs a response (``contract``) are decided here and used by the validation
child, the rollout's smoke check, the generated services, batch children and drift.

These modules import only the standard library and the ML libraries (numpy, pandas,
scikit-learn, ...), never Django or the rest of Modelyard: model processes run them
isolated (``python -I``) and the Bento carries them as plain files.
"""
