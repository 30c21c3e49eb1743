"""augsense.analyses"""
