"""Secrets: values an instance needs that never sit in git in clear.

Two sources: the host store (`hoststore.py`, `ondeck secret set`) and an
age-encrypted file in the repo (`agefile.py`, `secrets: {file: ...}`).
`resolve.py` merges them for one app and environment; the controller asks it
for the names (validation) and the values (instance environments). No module
here ever logs or returns a value except to the code that puts it in an
instance's environment.
"""
