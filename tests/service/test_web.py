"""The demo page served by `faceveil serve --accept-photos`, driven in headless Chromium (Debian's
`chromium`, through Playwright pointed at that executable; no browser is downloaded): upload a photo, see
what leaves the device, create a gallery, enrol, verify and identify."""

from __future__ import annotations

from tests.service.test_server import Server, _admin_key


def test_demo_page_enrols_verifies_and_identifies(browser, fo_bundle, tmp_path, lfw, data_root):
    _, bundle = fo_bundle
    db = f"sqlite:///{tmp_path / 'web.db'}"
    server = Server(bundle, db, tmp_path, data_root, "--accept-photos").start()
    try:
        key = _admin_key(tmp_path, db)
        files = lfw.dataset().files
        person = files[0].split("/")[0]
        photo = str(lfw.root / files[0])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('system').textContent.includes('defense faceobfuscator')")
        page.fill("#key", key)
        page.fill("#gallery", "web")
        page.fill("#subject", person)
        page.set_input_files("#photo", photo)

        def click(button: str, expect: str) -> str:
            page.click(button)
            page.wait_for_function(f"document.getElementById('out').textContent.includes({expect!r}) || "
                                   "document.getElementById('out').textContent.startsWith('error')", timeout=120_000)
            return page.text_content("#out")

        out = click("#protect", "never the photo")
        assert "shape [1,2,112,112]" in out and page.is_visible("#preview")
        assert page.eval_on_selector("#preview", "img => img.naturalWidth") >= 64
        assert click("#create", "gallery created") == "gallery created"
        assert click("#enroll", "enrolled") == f"enrolled {person}: 1 template(s)"
        out = click("#verify", "distance")
        assert out.startswith(("ACCEPTED", "REJECTED")) and "threshold" in out
        out = click("#identify", person)
        assert out.splitlines()[0].startswith(person)
        page.fill("#key", "wrong")
        assert click("#verify", "error").startswith("error: invalid API key")
        page.screenshot(path=str(tmp_path / "web.png"))
        assert errors == []
    finally:
        server.stop()
