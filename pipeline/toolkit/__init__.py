"""The public plugin toolkit: HTML link finding and splicing, token signing, VERP helpers. Built on the contract only; everything a built-in plugin imports beside pipeline is here."""
