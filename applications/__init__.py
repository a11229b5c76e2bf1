"""One module per job; each exposes a function taking the parsed Config and the set of explicit flags."""
