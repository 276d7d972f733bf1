using System.Threading.Channels;
using Microsoft.AspNetCore.SignalR;
using Rbs.Gateway.Tunnel;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// The dashboard's SignalR hub (<c>/dashboard/hub</c>). Its one method, <c>Watch</c>, streams the signed-in user's feed
/// (<see cref="DashboardFeed"/>). The user comes from the session the connection was admitted with
/// (<see cref="DashboardEndpoints"/> refuses a connection without one), never from anything the page sends later.
/// </summary>
internal sealed class DashboardHub(
    DashboardDirectoryClient directory,
    AgentTunnelRegistry registry,
    TimeProvider time,
    ILoggerFactory loggerFactory) : Hub
{
    /// <summary>Where the admission check puts the session's user for the hub.</summary>
    public const string UserItem = "rbs.dashboard.user";

    private const string WatchingItem = "rbs.dashboard.watching";

    public ChannelReader<DashboardMessage> Watch(CancellationToken cancellationToken)
    {
        if (Context.GetHttpContext()?.Items[UserItem] is not string user)
        {
            throw new HubException("sign in first: the dashboard session is missing or expired");
        }

        // One feed per connection: a page that asks twice gets an error, not a second set of watches.
        if (!Context.Items.TryAdd(WatchingItem, true))
        {
            throw new HubException("this connection already watches; open another connection for another feed");
        }

        var feed = new DashboardFeed(user, directory, registry, time, loggerFactory.CreateLogger<DashboardFeed>());
        _ = feed.RunAsync(cancellationToken);
        return feed.Reader;
    }
}
