"""Thin KFP components; each calls one freshrec function."""
