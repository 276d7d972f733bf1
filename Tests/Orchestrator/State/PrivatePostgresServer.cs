using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Npgsql;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// A PostgreSQL server of one test's own (initdb into a temp directory, pg_ctl on a free loopback port), for tests
/// that stop and start the database: the shared cluster (<see cref="PostgresServerFixture"/>) is never touched. As
/// root the server runs as the <c>postgres</c> user (PostgreSQL refuses root). Deleted on dispose.
/// </summary>
internal sealed class PrivatePostgresServer : IAsyncDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    private readonly string _bin;
    private readonly Action<string> _log;
    private readonly bool _asPostgresUser;

    private PrivatePostgresServer(string bin, string root, int port, Action<string> log)
    {
        _bin = bin;
        Root = root;
        Port = port;
        _log = log;
        _asPostgresUser = Environment.UserName == "root";
    }

    public string Root { get; }

    public int Port { get; }

    public string ConnectionString =>
        new NpgsqlConnectionStringBuilder { Host = "127.0.0.1", Port = Port, Username = "postgres", Database = "postgres", Timeout = 3, MaxPoolSize = 10 }.ConnectionString;

    private string DataDirectory => Path.Combine(Root, "data");

    public static async Task<PrivatePostgresServer> StartAsync(Action<string> log)
    {
        var bin = Directory.Exists("/usr/lib/postgresql")
            ? Directory.EnumerateDirectories("/usr/lib/postgresql").Select(v => Path.Combine(v, "bin")).Where(b => File.Exists(Path.Combine(b, "initdb"))).OrderDescending().FirstOrDefault()
            : null;
        if (bin is null)
        {
            throw new InvalidOperationException("PostgreSQL's initdb is not installed under /usr/lib/postgresql/*/bin: install the postgresql package (scripts/install-prereqs.sh; .ci/run does this).");
        }

        var server = new PrivatePostgresServer(bin, Directory.CreateTempSubdirectory("rbs-private-pg-").FullName, FreePort(), log);
        try
        {
            if (server._asPostgresUser)
            {
                await server.RunAsync("/bin/chown", ["postgres:", server.Root], asPostgres: false);
            }

            await server.RunAsync(Path.Combine(bin, "initdb"), ["-D", server.DataDirectory, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions"]);
            await server.StartAsync();
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>Starts the server (again) and returns once it accepts connections.</summary>
    public Task StartAsync() => RunAsync(Path.Combine(_bin, "pg_ctl"),
        ["-D", DataDirectory, "-l", Path.Combine(Root, "server.log"), "-w", "-t", "30", "start",
            "-o", $"-p {Port} -c listen_addresses=127.0.0.1 -k {Root} -c fsync=off -c max_connections=40"]);

    /// <summary>Stops the server (fast shutdown: open connections are cut) and returns once it is gone.</summary>
    public Task StopAsync() => RunAsync(Path.Combine(_bin, "pg_ctl"), ["-D", DataDirectory, "-m", "fast", "-w", "-t", "30", "stop"]);

    public async ValueTask DisposeAsync()
    {
        if (File.Exists(Path.Combine(DataDirectory, "postmaster.pid")))
        {
            try
            {
                await RunAsync(Path.Combine(_bin, "pg_ctl"), ["-D", DataDirectory, "-m", "immediate", "-w", "-t", "30", "stop"]);
            }
            catch (InvalidOperationException e)
            {
                _log($"could not stop the private PostgreSQL: {e.Message}");
            }
        }

        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log($"could not delete {Root}: {e.Message}");
        }
    }

    private async Task RunAsync(string file, string[] args, bool asPostgres = true)
    {
        var info = asPostgres && _asPostgresUser ? new ProcessStartInfo("/usr/sbin/runuser") { ArgumentList = { "-u", "postgres", "--", file } } : new ProcessStartInfo(file);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        info.RedirectStandardOutput = true;
        info.RedirectStandardError = true;
        info.UseShellExecute = false;
        info.WorkingDirectory = Root;
        _log($"$ {Path.GetFileName(file)} {string.Join(' ', args)}");
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"{file} did not start");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(s_timeout);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{Path.GetFileName(file)} exited {process.ExitCode}: {await stderr}{await stdout}");
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
