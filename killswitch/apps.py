from django.apps import AppConfig


class KillswitchConfig(AppConfig):
    name = "killswitch"
    verbose_name = "Kill switch"
