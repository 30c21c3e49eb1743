"""augsense.probe"""
