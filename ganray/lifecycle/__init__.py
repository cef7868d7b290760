"""After deployment: watching what the face API serves (`ganray monitor`) and retraining through the
promotion gate (`ganray retrain`). This room orchestrates the rooms below it (train, eval, serve's HTTP
API, the registry and its event log) and is imported only by the CLI.

promoted.py: which version an alias was last promoted to through its gate; api_client.py: faces from
the running API over HTTP; baseline.py: the promoted version's faces rendered offline and measured;
monitor.py: one monitoring run and its verdict; retrain.py: train, evaluate and promote, each step an
event tied to its cause.
"""
