#!/usr/bin/env bash
# Regenerates the speech clips the simulators speak (sim/assets/*.ul: raw G.711 μ-law, 8 kHz, mono).
# They are committed, so building and testing never needs espeak-ng; this script documents where
# they came from. Needs: apt-get install espeak-ng sox
set -euo pipefail
cd "$(dirname "$0")/../sim/assets"
say() { # name voice text
  espeak-ng -v "$2" -s 165 -w "/tmp/$1.wav" "$3"
  # Trim leading and trailing silence: a greeting that starts with silence sounds late.
  sox "/tmp/$1.wav" -r 8000 -c 1 -e mu-law -t raw "$1.ul" silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse norm -3
  rm -f "/tmp/$1.wav"
}
say greeting   en-us+f3 "Thanks for calling. This is your assistant. How can I help you today?"
say answer     en-us+f3 "Sure. We are open Monday to Friday, from nine in the morning to five in the evening. Is there anything else I can help you with?"
say goodbye    en-us+f3 "You're welcome. Have a lovely day. Goodbye!"
say question   en-us+m3 "Hi. What are your opening hours?"
say interrupt  en-us+m3 "Sorry, actually, can I book an appointment for tomorrow?"
say thanks     en-us+m3 "Great, thank you very much."
