"""augsense.io"""
