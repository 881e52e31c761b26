from killswitch.models import HubHalt


def hub_halt_get() -> HubHalt:
    return HubHalt.objects.filter(id=1).first() or HubHalt(id=1, halted=False)
