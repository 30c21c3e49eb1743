"""augsense.report"""
