num = 1
