using Grpc.Core;
using Rbs.JBazel.Remote;
using Rbs.V1;

namespace Rbs.Tests.JBazel;

/// <summary>jbazel's <c>rbs: dashboard</c> link (docs/dashboard.md): only with a gateway in the path.</summary>
public sealed class DashboardLinkTests
{
    [Theory]
    [InlineData("https://rbs.example.com", "https://rbs.example.com/dashboard/invocations/8e545f5e-2680-49b8-b78c-8e29871a0ab7")]
    [InlineData("http://127.0.0.1:8080/", "http://127.0.0.1:8080/dashboard/invocations/8e545f5e-2680-49b8-b78c-8e29871a0ab7")]
    public void ThroughTheGatewayTheLinkIsTheGatewaysDashboardPageOfTheInvocation(string gateway, string expected)
    {
        var allocation = Allocate(ConnectMode.Tunnel, gateway);
        Assert.Equal(expected, allocation.DashboardLink("8e545f5e-2680-49b8-b78c-8e29871a0ab7"));
        Assert.EndsWith("/dashboard/invocations/a%2Fb%20c", allocation.DashboardLink("a/b c"), StringComparison.Ordinal);
    }

    [Fact]
    public void DirectModeHasNoLink() =>
        Assert.Null(Allocate(ConnectMode.Direct, "http://127.0.0.1:40000").DashboardLink("id"));

    private static Allocation Allocate(ConnectMode mode, string address) =>
        new(new GetServerResponse { AgentId = "a1", Address = address, ConnectMode = mode }, new Uri(address), new Metadata(), 5);
}
