CircuitsVis.render(__ID__, CircuitsVis.__COMPONENT__, __PROPS__);
