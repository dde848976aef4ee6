import { describe, expect, test } from "vitest";
import { compareRoutes, compileRoute } from "../../localhost/routes";

describe("route templates", () => {
  test("literals and parameters, case-insensitive, trailing slash tolerated", () => {
    const route = compileRoute("mailboxes/{mailbox}/backups");
    expect(route.match("/mailboxes/a%40b.com/backups")).toEqual({ mailbox: "a@b.com" });
    expect(route.match("/MAILBOXES/x/Backups/")).toEqual({ mailbox: "x" });
    expect(route.match("/mailboxes/x")).toBeUndefined();
    expect(route.match("/mailboxes/x/backups/extra")).toBeUndefined();
  });

  test("optional parameters and defaults", () => {
    const route = compileRoute("backups/{id?}");
    expect(route.match("/backups")).toEqual({});
    expect(route.match("/backups/42")).toEqual({ id: "42" });
    expect(compileRoute("items/{page=1}").match("/items")).toEqual({ page: "1" });
  });

  test("constraints and catch-all", () => {
    const byInt = compileRoute("items/{n:int}");
    expect(byInt.match("/items/12")).toEqual({ n: "12" });
    expect(byInt.match("/items/abc")).toBeUndefined();
    expect(compileRoute("files/{*path}").match("/files/a/b/c.txt")).toEqual({ path: "a/b/c.txt" });
    expect(compileRoute("files/{name}.{ext}").match("/files/report.pdf")).toEqual({ name: "report", ext: "pdf" });
  });

  test("precedence: literal before parameter before catch-all", () => {
    const routes = ["x/{*rest}", "x/{id}", "x/special"].map(compileRoute).sort(compareRoutes);
    expect(routes.map((r) => r.template)).toEqual(["x/special", "x/{id}", "x/{*rest}"]);
  });
});
