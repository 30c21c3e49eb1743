"""augsense.estimators"""
