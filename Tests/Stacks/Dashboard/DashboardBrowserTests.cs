using System.Text.RegularExpressions;
using Microsoft.Playwright;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.Tests.Stacks.Tunnel;

namespace Rbs.Tests.Stacks.Dashboard;

/// <summary>One stack and one browser for the dashboard tests (a chromium launch costs seconds on 2 cores).</summary>
public class DashboardStackFixture : IAsyncLifetime
{
    public const string Chromium = "/usr/bin/chromium";

    private readonly List<string> _early = [];
    private Action<string>? _sink;
    private IPlaywright? _playwright;

    public TunnelStack Stack { get; private set; } = null!;

    /// <summary>Null when <see cref="Chromium"/> is not installed (the tests then skip, saying so).</summary>
    public IBrowser? Browser { get; private set; }

    public void Attach(ITestOutputHelper output)
    {
        _sink = line => TestLog.Write(output, line);
        Stack.AttachLog(_sink);
        lock (_early)
        {
            _early.ForEach(_sink);
            _early.Clear();
        }
    }

    public async Task InitializeAsync()
    {
        Stack = await TunnelStack.StartAsync(
            line =>
            {
                lock (_early)
                {
                    _early.Add(line);
                }
            },
            environment: Environment());
        if (!File.Exists(Chromium))
        {
            return;
        }

        // Playwright's driver (node, shipped in the NuGet package and copied to the test output) drives Debian's
        // chromium: no browser download, nothing from the network.
        _playwright = await Playwright.CreateAsync();
        Browser = await _playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            // As root (CI), chromium needs --no-sandbox; /dev/shm may be small in containers.
            Args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
            Timeout = 60_000,
        });
    }

    /// <summary>For the gateway and the orchestrator (<see cref="TunnelStack.StartAsync"/>); none by default.</summary>
    protected virtual IReadOnlyDictionary<string, string>? Environment() => null;

    public virtual async Task DisposeAsync()
    {
        if (Browser is not null)
        {
            await Browser.DisposeAsync();
        }

        _playwright?.Dispose();
        await Stack.DisposeAsync();
    }
}

/// <summary>
/// The gateway's dashboard in a real browser (Debian's chromium, driven by Playwright; docs/dashboard.md): a real stack
/// (gateway, orchestrator with API keys, a real agent in tunnel mode running fake-bazel's staged mode), the real jbazel
/// printing the command's dashboard link, and the page following the command live over SignalR.
/// </summary>
public sealed partial class DashboardBrowserTests : IClassFixture<DashboardStackFixture>, IDisposable
{
    // Generous: each wait polls its condition, and the whole suite runs beside these tests on 2 cores.
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    private readonly ITestOutputHelper _output;
    private readonly DashboardStackFixture _fixture;
    private readonly TunnelStack _stack;
    private readonly TempWorkspace _workspace = new();

    public DashboardBrowserTests(DashboardStackFixture fixture, ITestOutputHelper output)
    {
        _output = output;
        _fixture = fixture;
        fixture.Attach(output);
        _stack = fixture.Stack;
    }

    public void Dispose() => _workspace.Dispose();

    private IBrowser Browser => _fixture.Browser ?? throw new InvalidOperationException("no browser");

    [SkippableFact]
    public async Task ThePageShowsABuildsLiveColouredLinesThenItsExitCodeAndAnotherUserSeesNoneOfIt()
    {
        Skip.If(_fixture.Browser is null, $"{DashboardStackFixture.Chromium} is not installed (scripts/install-prereqs.sh installs Debian's chromium)");

        // fake-bazel's staged mode: each step waits for goN, then writes outN to stdout and errN to stderr; exit 3.
        // The agent runs under alice's uid (user isolation as root), so the directory is open to every uid.
        var steps = Directory.CreateDirectory(Path.Combine(_workspace.Base, "steps")).FullName;
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(_workspace.Base, (UnixFileMode)0x1ED); // 0755
            File.SetUnixFileMode(steps, (UnixFileMode)0x1FF); // 0777
        }
        await File.WriteAllTextAsync(Path.Combine(steps, "out1"), "\u001b[32mINFO:\u001b[0m Analyzed target //dash:all (1 packages loaded).\n");
        await File.WriteAllTextAsync(Path.Combine(steps, "err1"), "\u001b[1mdashboard-live-line\u001b[0m <b>not html</b>\r\n");
        await File.WriteAllTextAsync(Path.Combine(steps, "out2"), "\u001b[31mERROR:\u001b[0m dashboard-second-line\n");
        await File.WriteAllTextAsync(Path.Combine(steps, "err2"), "");
        await File.WriteAllTextAsync(Path.Combine(steps, "out3"), "");
        await File.WriteAllTextAsync(Path.Combine(steps, "err3"), "\u001b[31m\u001b[1mFAILED:\u001b[0m Build did NOT complete successfully\n");

        await using var jbazel = JBazelProcess.Start(_output, _workspace.Root, _workspace.Home, new Dictionary<string, string?>(),
        [
            $"--rbs_orchestrator={_stack.PublicAddress}", "--rbs_connect=tunnel", "--rbs_status=always", "--rbs_timeout=60s",
            $"--rbs_api_key={TunnelStack.AliceKey}", "staged", steps,
        ]);
        jbazel.StandardInput.Close();
        var link = await TestWait.EventuallyAsync(() => DashboardLink().Match(jbazel.StderrText) is { Success: true } m ? m.Groups[1].Value : null,
            "jbazel's 'rbs: dashboard' line", s_timeout);
        var agentId = TunnelEndToEndTests.StatusLine(jbazel.StderrText).AgentId;
        var invocationId = link[(link.LastIndexOf('/') + 1)..];
        _output.WriteLine($"dashboard link: {link} (agent {agentId}, invocation {invocationId})");
        Assert.StartsWith(_stack.PublicAddress + "/dashboard/invocations/", link, StringComparison.Ordinal);


        // Alice opens the link jbazel printed while the command waits at its first step.
        var alice = await OpenSignedInAsync(Browser, link, TunnelStack.AliceKey);
        var command = $"article.command[data-invocation='{invocationId}']";
        await WaitAsync(alice, $"document.querySelector(\"{command} .status\")?.textContent === 'running'", "the running command");
        Assert.True(await alice.IsVisibleAsync($"{command}.focused"), "the linked command is highlighted");

        // The first step's lines arrive while the command runs, in colour (bazel's green INFO) and escaped.
        await File.WriteAllTextAsync(Path.Combine(steps, "go1"), "");
        await WaitAsync(alice, $"document.querySelector(\"{command} pre.output\")?.textContent.includes('dashboard-live-line')", "the first live line");
        await WaitAsync(alice, $"[...document.querySelectorAll(\"{command} pre.output span.ansi-fg-2\")].some(s => s.textContent === 'INFO:')", "a green INFO: span");
        Assert.Equal("running", await alice.TextContentAsync($"{command} .status"));
        Assert.Contains("<b>not html</b>", await alice.TextContentAsync($"{command} pre.output"), StringComparison.Ordinal);
        Assert.Equal(0, await alice.Locator($"{command} pre.output b").CountAsync());
        Assert.True(await alice.IsVisibleAsync($"#agents tr[data-agent='{agentId}']"), "alice's agent is listed");
        Assert.Contains("tunnel", await alice.TextContentAsync($"#agents tr[data-agent='{agentId}']") ?? "", StringComparison.Ordinal);
        // Its first command: the build tool's server is still cold.
        await WaitAsync(alice, $"document.querySelector(\"#agents tr[data-agent='{agentId}']\").cells[4].textContent === 'cold'", "the agent shown cold");

        var screenshots = Directory.CreateTempSubdirectory("rbs-dashboard-screenshot-").FullName;
        var during = Path.Combine(screenshots, "dashboard-during-build.png");
        await alice.ScreenshotAsync(new PageScreenshotOptions { Path = during, FullPage = true });
        _output.WriteLine($"screenshot during the build: {during}");

        // The rest of the build, then its exit code and duration.
        await File.WriteAllTextAsync(Path.Combine(steps, "go2"), "");
        await WaitAsync(alice, $"[...document.querySelectorAll(\"{command} pre.output span.ansi-fg-1\")].some(s => s.textContent === 'ERROR:')", "the second step's red ERROR: span");
        await File.WriteAllTextAsync(Path.Combine(steps, "go3"), "");
        Assert.Equal(3, await jbazel.WaitForExitAsync(s_timeout));
        await WaitAsync(alice, $"document.querySelector(\"{command} .status\")?.dataset.exitCode === '3'", "the exit code");
        var status = await alice.TextContentAsync($"{command} .status") ?? "";
        _output.WriteLine($"status after the build: {status}");
        Assert.Matches(@"^exit code 3 · \d+(\.\d)? (ms|s)$", status);
        Assert.Contains("FAILED:", await alice.TextContentAsync($"{command} pre.output"), StringComparison.Ordinal);
        // Ended: listed under "recent", and the agent is warm for the next command.
        Assert.Equal(1, await alice.Locator($"#recent {command}").CountAsync());
        await WaitAsync(alice, $"document.querySelector(\"#agents tr[data-agent='{agentId}']\").cells[4].textContent === 'warm'", "the agent shown warm");
        var after = Path.Combine(screenshots, "dashboard-after-build.png");
        await alice.ScreenshotAsync(new PageScreenshotOptions { Path = after, FullPage = true });
        _output.WriteLine($"screenshot after the build: {after}");

        // Bob signs in with his own key: his feed has the agent list (none) and nothing of alice's.
        var bob = await OpenSignedInAsync(Browser, _stack.PublicAddress + "/dashboard/", TunnelStack.BobKey);
        await WaitAsync(bob, "!document.getElementById('no-agents').hidden", "bob's (empty) agent list");
        Assert.Equal("signed in as bob", await bob.TextContentAsync("#user"));
        Assert.Equal(0, await bob.Locator($"#agents tr[data-agent='{agentId}']").CountAsync());
        Assert.Equal(0, await bob.Locator("article.command").CountAsync());
        // And bob's browser on alice's command link shows nothing of it either.
        await bob.GotoAsync(link);
        await WaitAsync(bob, "!document.getElementById('no-agents').hidden", "bob's agent list on alice's link");
        Assert.Equal(0, await bob.Locator("article.command").CountAsync());
        Assert.DoesNotContain("dashboard-live-line", await bob.ContentAsync(), StringComparison.Ordinal);
        await alice.Context.CloseAsync();
        await bob.Context.CloseAsync();
    }

    [SkippableFact]
    public async Task AWrongKeyIsRefusedTheHubAdmitsOnlyALiveSessionFromItsOwnOriginAndSignOutEndsIt()
    {
        Skip.If(_fixture.Browser is null, $"{DashboardStackFixture.Chromium} is not installed (scripts/install-prereqs.sh installs Debian's chromium)");
        await using var context = await Browser.NewContextAsync(new BrowserNewContextOptions { BypassCSP = true });
        var page = await context.NewPageAsync();
        await page.GotoAsync(_stack.PublicAddress + "/dashboard/");
        await WaitAsync(page, "!document.getElementById('signin').hidden", "the sign-in form");
        await page.FillAsync("#apikey", "not-a-key");
        await page.ClickAsync("#signin button[type=submit]");
        await WaitAsync(page, "document.getElementById('signin-error').textContent !== ''", "the refusal");
        Assert.Equal("the API key was not accepted", await page.TextContentAsync("#signin-error"));

        // Without a session the hub never admits the connection (the page is not the gate: the server is).
        const string Negotiate = "fetch('/dashboard/hub/negotiate?negotiateVersion=1', { method: 'POST' }).then(r => r.status)";
        Assert.Equal(401, await page.EvaluateAsync<int>(Negotiate));
        await context.AddCookiesAsync([new Cookie { Name = "rbs-dashboard-session", Value = "forged", Url = _stack.PublicAddress + "/dashboard/" }]);
        Assert.Equal(401, await page.EvaluateAsync<int>(Negotiate));
        await context.ClearCookiesAsync();

        // Signed in, the session is an HttpOnly cookie: the page's script cannot read it, and another origin cannot use it.
        await page.FillAsync("#apikey", TunnelStack.BobKey);
        await page.ClickAsync("#signin button[type=submit]");
        await WaitAsync(page, "document.getElementById('connection').textContent === 'live'", "the live feed");
        Assert.DoesNotContain("rbs-dashboard-session", await page.EvaluateAsync<string>("document.cookie"), StringComparison.Ordinal);
        var crossSite = await context.APIRequest.PostAsync(_stack.PublicAddress + "/dashboard/hub/negotiate?negotiateVersion=1",
            new APIRequestContextOptions { Headers = new Dictionary<string, string> { ["Origin"] = "http://evil.example" } });
        Assert.Equal(403, crossSite.Status);
        Assert.Equal(200, await page.EvaluateAsync<int>(Negotiate));

        // Sign-out ends the session on the server.
        await page.ClickAsync("#signout");
        await WaitAsync(page, "!document.getElementById('signin').hidden", "the sign-in form after signing out");
        Assert.Equal(401, await page.EvaluateAsync<int>(Negotiate));
    }

    private async Task<IPage> OpenSignedInAsync(IBrowser browser, string url, string apiKey)
    {
        // A context per user: session storage (the dashboard session) is not shared.
        // BypassCSP: Playwright's waits evaluate strings, which the page's policy (no eval) forbids.
        var context = await browser.NewContextAsync(new BrowserNewContextOptions { ViewportSize = new ViewportSize { Width = 1280, Height = 900 }, BypassCSP = true });
        var page = await context.NewPageAsync();
        page.Console += (_, message) => _output.WriteLine($"[browser] {message.Text}");
        await page.GotoAsync(url);
        await WaitAsync(page, "!document.getElementById('signin').hidden", "the sign-in form");
        await page.FillAsync("#apikey", apiKey);
        await page.ClickAsync("#signin button[type=submit]");
        await WaitAsync(page, "document.getElementById('connection').textContent === 'live'", "the live feed");
        return page;
    }

    private static async Task WaitAsync(IPage page, string condition, string what)
    {
        try
        {
            await page.WaitForFunctionAsync(condition, null, new PageWaitForFunctionOptions { Timeout = (float)s_timeout.TotalMilliseconds, PollingInterval = 50 });
        }
        catch (TimeoutException e)
        {
            var body = await page.InnerTextAsync("body");
            Assert.Fail($"timed out waiting for {what} ({condition}): {e.Message}\npage text:\n{body}");
        }
    }

    [GeneratedRegex(@"rbs: dashboard (\S+)")]
    private static partial Regex DashboardLink();
}
