"""How people move between places: stays, trips and exact origin–destination counts.

Built on the stages below (each person's bounded, pseudonymised fixes); the counts are
private until the privacy layer noises them. Engines run ``stays`` per person.
"""
