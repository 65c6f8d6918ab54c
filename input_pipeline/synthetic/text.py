"""Templated dialogue text for the synthetic corpus.

History utterances come from emotion-neutral templates shared by all emotions
(and events drawn independently of the emotion), so the text alone carries no
emotion signal; `leak=True` appends an explicit emotion sentence (--text_leak).
The listener's response and the chain-of-empathy fields are targets and do
name or imply the emotion, with enough template variety to avoid a single
memorised answer per class.
"""
from __future__ import annotations

import numpy as np

# Neutral events per topic: nouns a conversation can be about without implying a feeling.
EVENTS: dict[str, tuple[str, ...]] = {
    "Social Issues and Moral Dilemmas": ("the town council meeting", "the recycling rules at work",
                                         "the petition at school", "the news report about housing"),
    "Achievements and Self-Realization": ("the bar exam results", "the cooking test at the academy",
                                          "the soccer match on Saturday", "the certification review"),
    "Support and Comfort": ("the long shift at the hospital", "the talk with my manager",
                            "the visit to the vet", "the call from my brother"),
    "Emotions and Feelings": ("the driving test", "the old photo album", "the message from my neighbour",
                              "the trip to the coast"),
    "Disappointments and Expectations": ("the project review", "the application I sent in",
                                         "the performance evaluation", "the partnership meeting"),
    "Life Events": ("the family gathering last weekend", "the job interview on Monday",
                    "the move to a new apartment", "the flowers that arrived at the door"),
    "Interpersonal Relationships": ("the dinner with my in-laws", "the chat with my roommate",
                                    "the group project at college", "the weekend with my cousin"),
    "Health and Well-being": ("the check-up at the clinic", "the new running routine",
                              "the sleep study", "the diet my doctor suggested"),
    "Uncertainty About the Future": ("the contract renewal", "the plan to change careers",
                                     "the budget for next year", "the letter from the bank"),
    "Personal Struggles and Challenges": ("the night classes", "the phone call from my parents",
                                          "the second job", "the exam retake"),
}
PEOPLE = ("my sister", "a coworker", "my neighbour", "my teacher", "an old friend", "my father",
          "my mother", "the manager", "my cousin", "a stranger")
WHEN = ("yesterday", "last week", "this morning", "on Friday", "a few days ago", "last night")

SPEAKER_OPEN = (
    "I want to tell you about {event}.", "So, there was news about {event} {when}.",
    "Do you remember {event}? It happened {when}.", "Let me tell you what happened with {event} {when}.",
    "Something came up with {event} {when}.", "I have been thinking about {event} since {when}.",
)
SPEAKER_MORE = (
    "It was {when}, and {person} was there too.", "I keep going over what {person} said about it.",
    "It all started when {person} called me about it.", "Then {person} told me the details.",
    "I did not expect {person} to bring it up again.", "After that I went home and sat down for a while.",
    "{person} asked me about it this morning.", "I am still thinking about what it means for me.",
)
LISTENER_ASK = (
    "What happened?", "Tell me more about it.", "When did this happen?", "Who else was there?",
    "How did the others react?", "And what did you do then?", "Oh, how did that go?", "What did they say?",
)

LEAK_SPEAKER = ("I feel really {label} about it.", "Honestly, I am {label}.", "It made me feel {label}.")
LEAK_LISTENER = ("You sound {label}.", "I can tell you are {label}.")

RESPONSE_OPEN: dict[str, tuple[str, ...]] = {
    "happy": ("That is wonderful news!", "How lovely to hear that!", "I am so glad for you!",
              "That sounds fantastic!", "What a great thing to happen!"),
    "surprised": ("Wow, I did not see that coming!", "Really? That is unexpected!", "No way, that is a surprise!",
                  "Oh my, what a twist!", "That must have caught you off guard!"),
    "angry": ("That sounds really infuriating.", "I would be angry too.", "That is not fair at all.",
              "No wonder you are upset.", "That would make anyone furious."),
    "fear": ("That sounds frightening.", "It is understandable to feel scared.", "That must be really worrying.",
             "I can see why that makes you anxious.", "That sounds like a scary situation."),
    "sad": ("I am so sorry to hear that.", "That sounds really hard.", "That must hurt a lot.",
            "I am sorry you are going through this.", "That is heartbreaking."),
    "disgusted": ("Ugh, that sounds awful.", "That is really gross.", "Yuck, I would feel sick too.",
                  "That is repulsive, I understand.", "How revolting, I am sorry you saw that."),
    "contempt": ("That kind of behaviour is so petty.", "I get why that annoys you.",
                 "Some people just do not show respect.", "That sounds so irritating.",
                 "It is hard not to roll your eyes at that."),
}
RESPONSE_MIDDLE: dict[str, tuple[str, ...]] = {
    "happy": ("You must feel so {label}.", "You really earned it.", "Moments like that are worth celebrating."),
    "surprised": ("It is natural to feel {label}.", "Life can be so unpredictable.", "That is quite a turn of events."),
    "angry": ("Your anger makes sense.", "Anyone would feel {label} in your place.", "You deserved better than that."),
    "fear": ("Feeling {label} is natural here.", "You are not alone in this.", "It is okay to be afraid."),
    "sad": ("It is okay to feel {label}.", "Take the time you need.", "Your feelings are valid."),
    "disgusted": ("Feeling {label} is a fair reaction.", "I would want to look away too.", "That crosses a line."),
    "contempt": ("Being {label} is understandable.", "They did not think it through.", "You expected more from them."),
}
RESPONSE_CLOSE = ("What will you do next about {event}?", "Do you want to talk more about it?",
                  "How are you holding up?", "Is there anything I can do?", "Have you told anyone else?",
                  "How do you feel about it now?", "")

CAUSE: dict[str, tuple[str, ...]] = {
    "happy": ("A good outcome of {event}", "Recognition received during {event}"),
    "surprised": ("An unexpected turn in {event}", "News about {event} that nobody predicted"),
    "angry": ("Unfair treatment during {event}", "Someone breaking a promise around {event}"),
    "fear": ("Uncertainty about what {event} will bring", "A threatening moment during {event}"),
    "sad": ("A loss connected to {event}", "Letting people down in {event}"),
    "disgusted": ("Something repulsive that happened during {event}", "Unhygienic conditions at {event}"),
    "contempt": ("Dismissive behaviour of others around {event}", "Someone showing off during {event}"),
}
GOAL: dict[str, tuple[str, ...]] = {
    "happy": ("Sharing the speaker's joy", "Celebrating the speaker's success"),
    "surprised": ("Acknowledging the speaker's surprise", "Exploring the unexpected news together"),
    "angry": ("Validating the speaker's anger", "Calming the speaker's frustration"),
    "fear": ("Alleviating the speaker's fear", "Reassuring the anxious speaker"),
    "sad": ("Comforting the speaker", "Offering support in a sad moment"),
    "disgusted": ("Acknowledging the speaker's disgust", "Agreeing that the situation was unacceptable"),
    "contempt": ("Validating the speaker's annoyance", "Helping the speaker let go of irritation"),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def history_utterance(index: int, event: str, rng: np.random.Generator, leak_label: str | None = None) -> str:
    """Utterance `index` of the history (even: speaker, odd: listener); neutral unless leak_label is set."""
    fill = {"event": event, "when": _pick(rng, WHEN), "person": _pick(rng, PEOPLE)}
    if index == 0:
        text = _pick(rng, SPEAKER_OPEN)
    elif index % 2 == 0:
        text = _pick(rng, SPEAKER_MORE)
    else:
        text = _pick(rng, LISTENER_ASK)
    text = _capitalize(text.format(**fill))
    if leak_label:
        text += " " + _pick(rng, LEAK_SPEAKER if index % 2 == 0 else LEAK_LISTENER).format(label=leak_label)
    return text


def response(emotion: str, label: str, event: str, rng: np.random.Generator) -> str:
    """The listener's empathetic reply (a target: it names or implies the emotion)."""
    parts = [_pick(rng, RESPONSE_OPEN[emotion]), _pick(rng, RESPONSE_MIDDLE[emotion]),
             _pick(rng, RESPONSE_CLOSE)]
    return " ".join(p.format(label=label, event=event) for p in parts if p)


def chain_of_empathy(emotion: str, label: str, event: str, turn: int, rng: np.random.Generator) -> dict:
    """Chain-of-empathy annotation of one turn; the scenario evolves with the turn number."""
    stage = ("is starting to talk about", "is explaining more about", "is reflecting on")[min(turn, 2)]
    return {
        "speaker_emotion": label,
        "event_scenario": f"The speaker {stage} {event} and feels {label}.",
        "emotion_cause": _pick(rng, CAUSE[emotion]).format(event=event) + ".",
        "goal_to_response": _pick(rng, GOAL[emotion]) + ".",
    }
