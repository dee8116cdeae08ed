"""Lab stand-in for the parties outside vdno on the hand-in path: the 14 area DNOs (who sign the CS02b
mode-3 command completing a DUIS 6.15.1 request) and DCC with its Access Control Broker (who adds the
ACB-SMD MAC and answers with a DUIS LocalCommand response). Test material only: keys are software PEM files.
Never imported by server code.

- labdcc.parties: ensure_lab_parties / load_lab_parties (lab SMKI hierarchy, area DNO and ACB credentials)
- labdcc.dno: LabDno (completes and signs a 6.15.1 request); labdcc.counters: OriginatorCounters
- labdcc.acb: LabAcb (checks and MACs); labdcc.dcc: LabDcc (DUIS in, DUIS out)
- labdcc.web: DuisHttpServer (POST /duis on loopback); labdcc.cli: `vdno-labdcc init | answer | serve`
"""

from vdno.labdcc.errors import LabDccError, RequestRefused

__all__ = ["LabDccError", "RequestRefused"]
