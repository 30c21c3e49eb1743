"""augsense.design"""
