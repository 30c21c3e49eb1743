"""augsense.factors"""
