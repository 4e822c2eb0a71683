// A stand-in for the `ipyevents` widget module on the rendered pages.
//
// Explorers in `detr_tutorial.viz` attach an `ipyevents.Event` to their image when ipyevents is
// installed, so a chapter executed with it stores an `EventModel` in its widget state. Without a
// kernel that model does nothing (no Python receives the clicks), but the widget manager would
// still fetch its JavaScript from a CDN. This module gives it a plain model instead: the page stays
// offline and the image and the other widgets render. `widgets-bootstrap.js` maps `ipyevents` here.
define(["@jupyter-widgets/base"], function (base) {
  "use strict";
  class EventModel extends base.WidgetModel {}
  return { EventModel: EventModel };
});
