/*
 * A node-mname backend for bbal's interoperability tests: a DNS server
 * built on the real mname library, reached only through
 * server.listenBalancer(), as in Binder.
 *
 *     node backend.js SOCKET_PATH NAME
 *
 * TXT queries are answered with "client=ADDR:PORT" (the client address the
 * balancer reported), "backend=NAME" and "proto=udp|tcp"; A queries with
 * 192.0.2.1. Like Binder, it removes a stale socket at start-up and unlinks
 * its socket on SIGTERM. It prints "ready" once it listens.
 */
'use strict';

var fs = require('fs');
var bunyan = require('bunyan');
var mname = require('mname');

var sockPath = process.argv[2];
var name = process.argv[3] || 'mname';
if (!sockPath) {
	console.error('usage: node backend.js SOCKET_PATH NAME');
	process.exit(2);
}

var log = bunyan.createLogger({
	name: 'mname-backend',
	level: process.env.MNAME_LOG_LEVEL || 'warn',
	stream: process.stderr
});
var server = mname.createServer({ log: log });

server.on('query', function (query, done) {
	var qname = query.name();
	switch (query.type()) {
	case 'TXT':
		query.addAnswer(qname, new mname.TXTRecord('client=' +
		    query.src.address + ':' + query.src.port), 0);
		query.addAnswer(qname, new mname.TXTRecord('backend=' + name), 0);
		query.addAnswer(qname, new mname.TXTRecord('proto=' +
		    query.src.family), 0);
		break;
	case 'A':
		query.addAnswer(qname, new mname.ARecord('192.0.2.1'), 0);
		break;
	default:
		break;
	}
	query.respond();
	done();
});

function unlinkSocket() {
	try {
		fs.unlinkSync(sockPath);
	} catch (err) {
		if (err.code !== 'ENOENT')
			throw (err);
	}
}

unlinkSocket();
server.listenBalancer({ path: sockPath }, function () {
	console.log('ready');
});

process.on('SIGTERM', function () {
	unlinkSocket();
	process.exit(0);
});
