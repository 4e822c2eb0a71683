// Mark the pages of the Korean edition (book/ko/...) as Korean: Sphinx writes one language for the
// whole site (`<html lang="en">`), but browsers choose fonts and line breaking, and screen readers
// their voice, from this attribute.
(function () {
  if (/\/book\/ko\//.test(window.location.pathname)) {
    document.documentElement.lang = "ko";
  }
})();
