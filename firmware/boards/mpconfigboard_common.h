// Every meshelect board. ESP-IDF's own mDNS responder would hold UDP 5353 without
// SO_REUSEADDR and keep the firmware's (firmware/lib/mdns.py) from binding it: both off.
#define MICROPY_HW_ENABLE_MDNS_RESPONDER (0)
#define MICROPY_HW_ENABLE_MDNS_QUERIES (0)
