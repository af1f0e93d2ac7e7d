"""differ: compares primary vs shadow (or recorded vs replayed) responses and reports what changed."""
