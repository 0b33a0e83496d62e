"""Who is calling (a key's caller, or the public tier by client address) and how much they may use."""
