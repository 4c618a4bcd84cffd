"""Channels consumers for the ASGI tests: an echo, and a group whose messages cross processes."""

import os

from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = os.environ.get("CHANNELS_TEST_GROUP", "hurricane-test-room")


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class Room(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send(text_data=f"joined {os.getpid()}")

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(GROUP, {"type": "room.message", "text": text_data})

    async def room_message(self, event):
        await self.send(text_data=f"{event['text']} via {os.getpid()}")

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)
