import { render, __COMPONENT__ } from __URL__;render(__ID__, __COMPONENT__, __PROPS__);
