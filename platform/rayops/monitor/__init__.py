"""Monitoring served traffic: drift against a dataset version's reference profile."""
