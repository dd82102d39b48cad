"""Device simulators for ecard: seeded turnstile and till scenarios, and the crash driver.

    python -m simulators rush  --pupils 1000 --seed 7 --gateway 127.0.0.1:7700
    python -m simulators lunch --pupils 1000 --seed 7 --gateway 127.0.0.1:7700
    python -m simulators crash --rounds 10 --pg-dsn postgresql://...
"""
