"""The built-in demo: two versions of a small service, and the job that shows shadowtap end to end."""
