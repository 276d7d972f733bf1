using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Playwright;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.Stacks.Tunnel;

namespace Rbs.Tests.Stacks.Dashboard;

/// <summary>The dashboard's stack with TLS on the gateway's public endpoint (a self-signed certificate for 127.0.0.1).</summary>
public sealed class DashboardTlsStackFixture : DashboardStackFixture
{
    private readonly string _directory = Directory.CreateTempSubdirectory("rbs-dashboard-tls-").FullName;

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    protected override IReadOnlyDictionary<string, string>? Environment()
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        var path = Path.Combine(_directory, "gateway.pfx");
        File.WriteAllBytes(path, certificate.Export(X509ContentType.Pfx, "test"));
        return new Dictionary<string, string> { ["Gateway__CertificatePath"] = path, ["Gateway__CertificatePassword"] = "test" };
    }
}

/// <summary>
/// With TLS the public endpoint serves HTTP/1.1 and HTTP/2 by ALPN, so the browser reaches the dashboard without the
/// cleartext relay (docs/dashboard.md): the page arrives over HTTP/2 and its feed goes live.
/// </summary>
public sealed class DashboardTlsTests : IClassFixture<DashboardTlsStackFixture>
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    private readonly ITestOutputHelper _output;
    private readonly DashboardTlsStackFixture _fixture;

    public DashboardTlsTests(DashboardTlsStackFixture fixture, ITestOutputHelper output)
    {
        _output = output;
        _fixture = fixture;
        fixture.Attach(output);
    }

    [SkippableFact]
    public async Task OverTlsThePageComesByHttp2AndItsFeedGoesLive()
    {
        Skip.If(_fixture.Browser is null, $"{DashboardStackFixture.Chromium} is not installed (scripts/install-prereqs.sh installs Debian's chromium)");
        var address = _fixture.Stack.PublicAddress;
        Assert.StartsWith("https://", address, StringComparison.Ordinal);

        // The test's own certificate: the browser is told to accept it. BypassCSP: Playwright's waits evaluate strings.
        await using var context = await _fixture.Browser!.NewContextAsync(new BrowserNewContextOptions { IgnoreHTTPSErrors = true, BypassCSP = true });
        var page = await context.NewPageAsync();
        page.Console += (_, message) => _output.WriteLine($"[browser] {message.Text}");
        await page.GotoAsync(address + "/dashboard/");
        var protocol = await page.EvaluateAsync<string>("performance.getEntriesByType('navigation')[0].nextHopProtocol");
        _output.WriteLine($"page protocol: {protocol}");
        Assert.Equal("h2", protocol);

        await Wait(page, "!document.getElementById('signin').hidden");
        await page.FillAsync("#apikey", TunnelStack.BobKey);
        await page.ClickAsync("#signin button[type=submit]");
        await Wait(page, "document.getElementById('connection').textContent === 'live'");
        await Wait(page, "!document.getElementById('no-agents').hidden");
        Assert.Equal("signed in as bob", await page.TextContentAsync("#user"));
    }

    private static Task Wait(IPage page, string condition) =>
        page.WaitForFunctionAsync(condition, null, new PageWaitForFunctionOptions { Timeout = (float)s_timeout.TotalMilliseconds, PollingInterval = 50 });
}
