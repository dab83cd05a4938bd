"use strict";
// The API reference: Swagger UI over this service's own /openapi.json.
// Nothing is loaded from elsewhere, and nothing is kept: a key given to
// Authorize lives in this tab until it is closed or reloaded.
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    displayRequestDuration: true,
    // no badge from validator.swagger.io: the page talks to this service only
    validatorUrl: null,
    persistAuthorization: false,
  });
});
