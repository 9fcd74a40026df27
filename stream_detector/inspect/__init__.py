"""`stream-detector init --sample`: a first settings file drafted from a sample of the records.

Writing a mapping by hand means knowing which field is the key, which the time and in what unit,
and which numbers are readings rather than identifiers; a few hundred records answer most of
that. The draft is a starting point with every choice explained, for the user to edit.
"""
